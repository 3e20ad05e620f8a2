"""Reinforcement-learning stages (grpo, ppo): their objectives first (`objectives.py`)."""
