"""The edge: speaks ChatKit's HTTP/SSE protocol and turns every operation into one gRPC call."""
