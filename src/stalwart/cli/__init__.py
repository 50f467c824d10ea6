"""The `stalwart` command line: a thin shell over Client and Worker."""
