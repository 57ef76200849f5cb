"""One module per area of the CLI; each command parses options and calls one library function."""
