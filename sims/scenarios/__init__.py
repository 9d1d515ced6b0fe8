"""Built-in scenarios (folders) and the scripts that generate them."""
