"""See hashserv/__init__.py."""
