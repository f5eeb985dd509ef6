"""Server-rendered views of the console."""
