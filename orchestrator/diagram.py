"""`python -m orchestrator.diagram`: the Mermaid diagram of every saga the orchestrator
runs, as the README shows them (a test checks they agree)."""

from orchestrator.engine.diagram import mermaid
from orchestrator.sagas import SAGAS

if __name__ == "__main__":
    for saga in SAGAS:
        print(f"{saga.name}:\n\n```mermaid\n{mermaid(saga)}```\n")
