"""Application services: what the UI asks for, composed from store, net, backup and protocol."""
