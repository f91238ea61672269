from . import decode_throughput

decode_throughput.main()
