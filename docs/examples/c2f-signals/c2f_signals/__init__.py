"""An example coarse2fine domain: class-conditional 1-D waveforms (see README.md)."""
