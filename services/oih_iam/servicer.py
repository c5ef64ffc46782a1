"""The IamService servicer: converts protos to calls of `logic` (one object per concern) and
back, nothing more.

Access rules are declared in the contract and enforced by the shared interceptors; the caller
is `principal.current()`.
"""

from __future__ import annotations

import json

import grpc
from google.api import httpbody_pb2
from google.protobuf import empty_pb2

from oih.iam.v1 import iam_pb2, iam_pb2_grpc
from oih_iam import convert
from oih_iam import permissions as catalogue
from oih_iam.keys import KeyStore
from oih_iam.logic import Iam
from oih_iam.models import ServiceAccountRow, UserRow
from oih_iam.tokens import Issued
from oih_runtime import clock, principal
from oih_runtime.errors import PermissionDenied, Unauthenticated
from oih_runtime.tokens import TokenVerifier

Context = grpc.ServicerContext

#: A token's `typ` → the principal's type.
PRINCIPAL_TYPES: dict[str, iam_pb2.PrincipalType.ValueType] = {
    "user": iam_pb2.PRINCIPAL_TYPE_USER, "service": iam_pb2.PRINCIPAL_TYPE_SERVICE_ACCOUNT}


def _token(issued: Issued) -> iam_pb2.AccessToken:
    return iam_pb2.AccessToken(access_token=issued.token, token_type="Bearer",
                               expires_in=issued.expires_in)


class IamServicer(iam_pb2_grpc.IamServiceServicer):
    def __init__(self, iam: Iam, keys: KeyStore, verifier: TokenVerifier) -> None:
        self.iam = iam
        self.keys = keys
        self.verifier = verifier

    # tokens -------------------------------------------------------------

    def Login(self, request: iam_pb2.LoginRequest, context: Context) -> iam_pb2.AccessToken:
        return _token(self.iam.sessions.login(request.username, request.password))

    def ExchangeToken(self, request: iam_pb2.ExchangeTokenRequest,
                      context: Context) -> iam_pb2.AccessToken:
        return _token(self.iam.sessions.exchange(request.client_id, request.client_secret))

    def GetJwks(self, request: iam_pb2.GetJwksRequest, context: Context) -> httpbody_pb2.HttpBody:
        return httpbody_pb2.HttpBody(content_type="application/json",
                                     data=json.dumps(self.keys.jwks()).encode())

    def IntrospectToken(self, request: iam_pb2.IntrospectTokenRequest,
                        context: Context) -> iam_pb2.TokenInfo:
        try:
            found = self.verifier.verify(request.token)
        except Exception:
            return iam_pb2.TokenInfo(active=False)
        info = iam_pb2.TokenInfo(
            active=True, subject=found.subject, tenant=found.tenant,
            permissions=sorted(found.permissions), token_id=found.token_id,
            principal_type=PRINCIPAL_TYPES.get(found.typ, iam_pb2.PRINCIPAL_TYPE_UNSPECIFIED),
        )
        info.expire_time.FromSeconds(found.expires_at)
        return info

    def RevokeToken(self, request: iam_pb2.RevokeTokenRequest,
                    context: Context) -> empty_pb2.Empty:
        caller = principal.current()
        try:
            target = self.verifier.verify(request.token) if request.token else caller
        except Unauthenticated:
            # RFC 7009: a token that is invalid already (malformed, expired, revoked, forged)
            # needs no revoking; answering 401 would tell the caller its own token is bad.
            return empty_pb2.Empty()
        if target.subject != caller.subject and not caller.has("iam.token.delete"):
            raise PermissionDenied("revoking another principal's token needs iam.token.delete")
        self.iam.sessions.revoke(token_id=target.token_id, expires=target.expires_at)
        return empty_pb2.Empty()

    def ListRevocations(self, request: iam_pb2.ListRevocationsRequest,
                        context: Context) -> iam_pb2.ListRevocationsResponse:
        return iam_pb2.ListRevocationsResponse(revocations=self.iam.sessions.list_revocations())

    def RotateSigningKey(self, request: iam_pb2.RotateSigningKeyRequest,
                         context: Context) -> iam_pb2.SigningKey:
        row, start = self.keys.rotate()
        return iam_pb2.SigningKey(key_id=row.kid, algorithm="RS256",
                                  create_time=clock.timestamp(row.create_time),
                                  start_time=clock.timestamp(start))

    def GetCurrentPrincipal(self, request: iam_pb2.GetCurrentPrincipalRequest,
                            context: Context) -> iam_pb2.Principal:
        caller = principal.current()
        if caller.typ == "service":
            display = self.iam.service_accounts.get(caller, caller.subject).display_name
        else:
            display = self.iam.users.get(caller, caller.subject).username
        return iam_pb2.Principal(
            name=caller.subject, tenant=caller.tenant, display_name=display,
            type=PRINCIPAL_TYPES.get(caller.typ, iam_pb2.PRINCIPAL_TYPE_UNSPECIFIED),
            permissions=sorted(caller.permissions),
        )

    def ListPermissions(self, request: iam_pb2.ListPermissionsRequest,
                        context: Context) -> iam_pb2.ListPermissionsResponse:
        admin = principal.current().is_platform_admin
        return iam_pb2.ListPermissionsResponse(permissions=[
            iam_pb2.Permission(name=p.name, description=p.description, restricted=p.restricted)
            for p in catalogue.CATALOGUE if admin or not p.restricted
        ])

    # tenants ------------------------------------------------------------

    def CreateTenant(self, request: iam_pb2.CreateTenantRequest,
                     context: Context) -> iam_pb2.Tenant:
        return convert.tenant(self.iam.tenants.create(request.tenant.display_name))

    def GetTenant(self, request: iam_pb2.GetTenantRequest, context: Context) -> iam_pb2.Tenant:
        return convert.tenant(self.iam.tenants.get(principal.current(), request.name))

    def ListTenants(self, request: iam_pb2.ListTenantsRequest,
                    context: Context) -> iam_pb2.ListTenantsResponse:
        rows, token = self.iam.tenants.list_page(principal.current(), request.page_size,
                                            request.page_token)
        return iam_pb2.ListTenantsResponse(tenants=[convert.tenant(r) for r in rows],
                                           next_page_token=token)

    def UpdateTenant(self, request: iam_pb2.UpdateTenantRequest,
                     context: Context) -> iam_pb2.Tenant:
        t = request.tenant
        row = self.iam.tenants.update(t.name, list(request.update_mask.paths),
                                     t.display_name, t.state)
        return convert.tenant(row)

    def DeleteTenant(self, request: iam_pb2.DeleteTenantRequest,
                     context: Context) -> empty_pb2.Empty:
        self.iam.tenants.delete(request.name)
        return empty_pb2.Empty()

    # users --------------------------------------------------------------

    def _user(self, row: UserRow) -> iam_pb2.User:
        return convert.user(row, self.iam.sessions.effective_permissions(row.roles,
                                                                         row.permissions))

    def CreateUser(self, request: iam_pb2.CreateUserRequest, context: Context) -> iam_pb2.User:
        u = request.user
        row = self.iam.users.create(
            principal.current(), username=u.username, display_name=u.display_name,
            tenant=u.tenant, roles=list(u.roles), permissions=list(u.permissions),
            state=u.state, password=request.password,
        )
        return self._user(row)

    def GetUser(self, request: iam_pb2.GetUserRequest, context: Context) -> iam_pb2.User:
        return self._user(self.iam.users.get(principal.current(), request.name))

    def ListUsers(self, request: iam_pb2.ListUsersRequest,
                  context: Context) -> iam_pb2.ListUsersResponse:
        rows, token = self.iam.users.list_page(principal.current(), request.page_size,
                                          request.page_token, request.tenant)
        return iam_pb2.ListUsersResponse(users=[self._user(r) for r in rows],
                                         next_page_token=token)

    def UpdateUser(self, request: iam_pb2.UpdateUserRequest, context: Context) -> iam_pb2.User:
        u = request.user
        row = self.iam.users.update(
            principal.current(), u.name, list(request.update_mask.paths),
            display_name=u.display_name, roles=list(u.roles), permissions=list(u.permissions),
            state=u.state, password=request.password,
        )
        return self._user(row)

    def DeleteUser(self, request: iam_pb2.DeleteUserRequest, context: Context) -> empty_pb2.Empty:
        self.iam.users.delete(principal.current(), request.name)
        return empty_pb2.Empty()

    # roles --------------------------------------------------------------

    def CreateRole(self, request: iam_pb2.CreateRoleRequest, context: Context) -> iam_pb2.Role:
        r = request.role
        return convert.role(self.iam.roles.create(principal.current(), r.display_name,
                                                 r.description, list(r.permissions)))

    def GetRole(self, request: iam_pb2.GetRoleRequest, context: Context) -> iam_pb2.Role:
        return convert.role(self.iam.roles.get(principal.current(), request.name))

    def ListRoles(self, request: iam_pb2.ListRolesRequest,
                  context: Context) -> iam_pb2.ListRolesResponse:
        rows, token = self.iam.roles.list_page(principal.current(), request.page_size,
                                          request.page_token)
        return iam_pb2.ListRolesResponse(roles=[convert.role(r) for r in rows],
                                         next_page_token=token)

    def UpdateRole(self, request: iam_pb2.UpdateRoleRequest, context: Context) -> iam_pb2.Role:
        r = request.role
        row = self.iam.roles.update(principal.current(), r.name, list(request.update_mask.paths),
                                   display_name=r.display_name, description=r.description,
                                   permissions=list(r.permissions))
        return convert.role(row)

    def DeleteRole(self, request: iam_pb2.DeleteRoleRequest, context: Context) -> empty_pb2.Empty:
        self.iam.roles.delete(principal.current(), request.name)
        return empty_pb2.Empty()

    # service accounts ---------------------------------------------------

    def _account(self, row: ServiceAccountRow, secret: str = "") -> iam_pb2.ServiceAccount:
        effective = self.iam.sessions.effective_permissions(row.roles, row.permissions)
        return convert.service_account(row, effective, secret)

    def CreateServiceAccount(self, request: iam_pb2.CreateServiceAccountRequest,
                             context: Context) -> iam_pb2.ServiceAccount:
        a = request.service_account
        row, secret = self.iam.service_accounts.create(
            principal.current(), display_name=a.display_name, tenant=a.tenant,
            roles=list(a.roles), permissions=list(a.permissions), state=a.state,
        )
        return self._account(row, secret)

    def GetServiceAccount(self, request: iam_pb2.GetServiceAccountRequest,
                          context: Context) -> iam_pb2.ServiceAccount:
        return self._account(self.iam.service_accounts.get(principal.current(), request.name))

    def ListServiceAccounts(self, request: iam_pb2.ListServiceAccountsRequest,
                            context: Context) -> iam_pb2.ListServiceAccountsResponse:
        rows, token = self.iam.service_accounts.list_page(principal.current(), request.page_size,
                                                     request.page_token)
        return iam_pb2.ListServiceAccountsResponse(
            service_accounts=[self._account(r) for r in rows], next_page_token=token)

    def UpdateServiceAccount(self, request: iam_pb2.UpdateServiceAccountRequest,
                             context: Context) -> iam_pb2.ServiceAccount:
        a = request.service_account
        row = self.iam.service_accounts.update(
            principal.current(), a.name, list(request.update_mask.paths),
            display_name=a.display_name, roles=list(a.roles), permissions=list(a.permissions),
            state=a.state,
        )
        return self._account(row)

    def DeleteServiceAccount(self, request: iam_pb2.DeleteServiceAccountRequest,
                             context: Context) -> empty_pb2.Empty:
        self.iam.service_accounts.delete(principal.current(), request.name)
        return empty_pb2.Empty()

    def ResetServiceAccountSecret(self, request: iam_pb2.ResetServiceAccountSecretRequest,
                                  context: Context) -> iam_pb2.ServiceAccount:
        row, secret = self.iam.service_accounts.reset_secret(principal.current(), request.name)
        return self._account(row, secret)


