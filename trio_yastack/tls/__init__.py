"""TLS over any ``trio.abc.Stream`` of the stack (termination for the L7 proxy): to come."""
