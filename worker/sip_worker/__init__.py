"""The per-session worker: the ondewo.sip.Sip gRPC service over one PJSUA2 user agent."""
