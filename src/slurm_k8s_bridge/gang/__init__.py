"""gang"""
