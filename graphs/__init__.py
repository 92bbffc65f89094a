"""LangGraph state machines: THI (online) and RDA (offline), with their CLIs."""
