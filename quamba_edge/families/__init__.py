"""Model families: each is one module behind the `Family` protocol (base.py); `registry` picks one."""
