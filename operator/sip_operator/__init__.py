"""The kopf operator that reconciles SipSession custom resources into worker pods."""
