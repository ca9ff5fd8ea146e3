"""Code every Switchboard service shares: configuration, auth, the ChatKit <-> protobuf codec."""
