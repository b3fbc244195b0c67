"""mdistiller's own tools/train.py with ICKD registered: see ickd_plugin/mdistiller.py.

    python tools/train_mdistiller.py --mdistiller PATH --cfg CFG [--resume] [KEY VALUE ...]
"""
from ickd_plugin.mdistiller import main

if __name__ == "__main__":
    main()
