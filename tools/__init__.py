"""Release tooling (not shipped in the bundle zip)."""
