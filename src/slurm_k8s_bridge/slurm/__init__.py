"""The Slurm side: the Python halves of the two plugins, sbatch option parsing, the Slurm client and its record parsing, slurm.conf lines, the plugin build."""
