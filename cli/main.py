"""The `saga` command: local broker, topics, workers, orders and inspection."""

from __future__ import annotations

import click

from cli.bench_cmd import bench
from cli.chaos_cmd import chaos
from cli.dead_letters_cmd import dead_letters
from cli.kafka_cmd import kafka
from cli.ops_cmd import abort, list_, retry
from cli.orders_cmd import cancel, order, seed, status
from cli.tail_cmd import tail
from cli.topics_cmd import topics
from cli.up_cmd import up
from cli.worker_cmd import worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """CreateOrderSaga on Kafka: run it, place orders, watch sagas."""


cli.add_command(kafka)
cli.add_command(topics)
cli.add_command(worker)
cli.add_command(tail)
cli.add_command(bench)
cli.add_command(chaos)
cli.add_command(dead_letters)
for command in (up, order, cancel, seed, status, list_, abort, retry):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="saga")


if __name__ == "__main__":
    main()
