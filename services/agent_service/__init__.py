"""The agent service: owns threads and items, runs the agents, streams ChatKit events over gRPC."""
