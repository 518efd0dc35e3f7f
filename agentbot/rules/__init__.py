"""Rule families: each module parses its setting and answers one question about a delivery."""
