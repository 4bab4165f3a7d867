"""The publisher side: a TUF release repository of fleetup releases and deltas."""

from fleetup.repository._keys import ROLES, key_path, load_signer, passphrase_from_env, save_key
from fleetup.repository._migrate import check_layout, migrate_layout
from fleetup.repository._publisher import (
    ONLINE_ROLES,
    AddedRelease,
    ReleaseRequest,
    add_release,
    init_repo,
    list_releases,
    open_repository,
    refresh_repo,
    releases_of,
    rotate_key,
    rotate_keys,
    yank_release,
)
from fleetup.repository._store import (
    FileRepository,
    RepoConfig,
    RepoLayout,
    repo_lock,
    target_file_name,
)

__all__ = [
    "ONLINE_ROLES",
    "ROLES",
    "AddedRelease",
    "FileRepository",
    "ReleaseRequest",
    "RepoConfig",
    "RepoLayout",
    "add_release",
    "check_layout",
    "init_repo",
    "key_path",
    "list_releases",
    "load_signer",
    "migrate_layout",
    "open_repository",
    "passphrase_from_env",
    "refresh_repo",
    "releases_of",
    "repo_lock",
    "rotate_key",
    "rotate_keys",
    "save_key",
    "target_file_name",
    "yank_release",
]
