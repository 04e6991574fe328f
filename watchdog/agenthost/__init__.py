"""The host's end of the in-process agent: everything about agents that runs outside the trainer.

- `link`: the Unix datagram socket agents report to (`AgentListener`), used by `serve` and `run`;
- `runner`: `vramwatch run -- <command>`, which puts the agent into every Python process of a command;
- `monitor`: the small built-in check `run` does when no daemon watches.

The agent itself (`vramwatch.agent`) runs inside the trainer and imports only the standard library; this
package may use all of vramwatch. The one module both sides share is the wire format,
`vramwatch.agent.protocol`, which imports nothing but the standard library: the host depends on the agent's
protocol, never the other way round.
"""
