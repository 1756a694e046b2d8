"""One router per resource: each validates, calls a library function, and returns."""
