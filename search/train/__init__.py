"""Training one configuration: timm backbones and heads, imported weights, batch augmentation, losses, the loop."""
