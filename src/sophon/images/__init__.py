"""Base images: read-only root filesystems built from Debian's packages, one per base,
stored content-addressed and shared by every box of that base (see docs/ARCHITECTURE.md,
"Images")."""
