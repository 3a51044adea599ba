"""localcloud: a durable, loopback-only local AWS for the services this pipeline uses (see README.md)."""

__version__ = "0.1.0"
