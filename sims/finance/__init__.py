"""The finance service simulator (FastAPI + Postgres schema finance_sim)."""
