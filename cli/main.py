"""The `saga` command: local broker, topics, workers, orders and inspection."""

from __future__ import annotations

import click

from cli.kafka_cmd import kafka
from cli.topics_cmd import topics


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """CreateOrderSaga on Kafka: run it, place orders, watch sagas."""


cli.add_command(kafka)
cli.add_command(topics)


def main() -> None:
    cli(prog_name="saga")


if __name__ == "__main__":
    main()
