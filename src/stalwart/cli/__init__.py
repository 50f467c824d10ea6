"""The `stalwart` command line: a thin shell over Client, Worker and the store."""
