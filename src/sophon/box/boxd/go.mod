module sophon/boxd

go 1.19
