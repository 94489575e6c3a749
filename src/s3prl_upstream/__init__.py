"""An s3prl upstream for SSAMBA/SSAST encoders exported by this project (docs/interop.md)."""
