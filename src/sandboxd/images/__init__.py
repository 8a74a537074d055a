"""OCI runtime images: fetched or built, verified, unpacked layer by layer, and run as sandbox roots.

Everything read from an image (its layers, its config, the symbolic links inside its tree) is
untrusted input handled as host root; see `inroot` for how paths inside an image are resolved.
"""
