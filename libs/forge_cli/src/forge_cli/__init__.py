"""The ``forge`` command line of the Forge CI/CD platform."""
