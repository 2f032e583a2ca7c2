"""Process lifecycle: wiring, signals, the scheduler bell, replay."""
