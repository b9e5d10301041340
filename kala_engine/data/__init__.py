"""Constitutional data: generation, import, validation, tokenization and targets."""
