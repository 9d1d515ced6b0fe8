"""The DigitalOcean API simulator (FastAPI)."""
