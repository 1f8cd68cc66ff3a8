"""The egress door: the only way out of a box, and the credentials only it holds."""
