"""Producers: exchange trade feeds (live websockets or recorded frames) into Kafka as V2 Avro.

``normalize`` turns raw frames into V2 records, ``codec`` encodes them, ``pipeline`` ties the
two to a sink and counts, ``kafka`` is the Kafka sink, ``replay`` and ``live`` feed frames in,
``generator`` writes realistic recordings, ``cli`` holds ``lakehouse produce`` and ``generate``.
"""
