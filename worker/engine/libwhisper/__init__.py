"""ctypes over the libwhisper that the pinned pywhispercpp wheel ships.

`structs` declares whisper.cpp's structs and checks them against the library, `loader` finds
and loads it, `context` holds one context (the weights) and a state per concurrent call.
"""
