"""Switchboard: a self-hosted ChatKit backend built as gRPC microservices."""
