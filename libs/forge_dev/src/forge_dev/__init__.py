"""Developer tooling for Forge: CLI, dev token issuer, embedded stack."""
