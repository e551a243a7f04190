"""Rewards: plain callables (images, prompts, metadata) -> one float per image.

`get_reward("jpeg_compressibility")`, `get_reward("mypkg.mod:fn")`, or a weighted
combination `parse_reward_spec("shapes:1.0,jpeg_compressibility:0.1")`.
"""
from diffrl.rewards.base import Reward, get_reward, parse_reward_spec, register_reward, reward_names

__all__ = ["Reward", "get_reward", "parse_reward_spec", "register_reward", "reward_names"]
