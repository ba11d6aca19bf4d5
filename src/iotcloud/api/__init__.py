"""HTTP and WebSocket edges: parse, call a service, render the dialect's shapes."""
