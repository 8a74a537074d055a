"""OCI runtime images: import, pull, build, unpack."""
