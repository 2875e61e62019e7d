"""Tools for development, tests and benchmarks: a private rabbitmq-server, word error rates.

Never imported by the service (an import contract checks it).
"""
