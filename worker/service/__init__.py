"""The RabbitMQ service: consume jobs, fetch their inputs, run the pipeline, publish results.

`consumer` and `publisher` are the only modules of the runtime that speak AMQP (pika).
"""
