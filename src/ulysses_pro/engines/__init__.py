"""Training engines this project drives itself (FSDP2); DeepSpeed stays with accelerate."""
