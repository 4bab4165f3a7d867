"""The device side: a persisted, crash-safe update state machine over TUF-verified releases.

The agent never imports the server or the CLI; it installs without FastAPI or SQLAlchemy.
"""
