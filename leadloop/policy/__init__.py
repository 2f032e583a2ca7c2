"""Policy: what to do about an understood reply, and the guardrails every
draft passes before it reaches the outbox."""
