"""The registration authority API for branch offices and CA operators."""
