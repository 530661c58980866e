//! The control API's entry points: each call is handled in the module of its subject
//! (the cluster, services, nodes, networks); this impl only routes.

use shoal_api::control as pc;
use shoal_api::control::control_server::Control;
use tonic::{Request, Response, Status};

use super::{ManagerService, cluster_info, networks, nodes, services, volumes};

#[tonic::async_trait]
impl Control for ManagerService {
    async fn init(&self, r: Request<pc::InitRequest>) -> Result<Response<pc::InitReply>, Status> {
        cluster_info::init(self, r).await
    }

    async fn info(&self, r: Request<pc::InfoRequest>) -> Result<Response<pc::InfoReply>, Status> {
        cluster_info::info(self, r).await
    }

    async fn join_token(
        &self,
        r: Request<pc::JoinTokenRequest>,
    ) -> Result<Response<pc::JoinTokenReply>, Status> {
        cluster_info::join_token(self, r).await
    }

    async fn issue_client_cert(
        &self,
        r: Request<pc::ClientCertRequest>,
    ) -> Result<Response<pc::ClientCertReply>, Status> {
        cluster_info::issue_client_cert(self, r).await
    }

    async fn join_cluster(
        &self,
        r: Request<pc::JoinClusterRequest>,
    ) -> Result<Response<pc::JoinClusterReply>, Status> {
        if self.remote {
            return Err(Status::permission_denied(
                "joining is asked of a node on its own socket: run \"shoal join\" on the node",
            ));
        }
        self.join_cluster_here(r.into_inner())
            .await
            .map(Response::new)
    }

    async fn leave_cluster(
        &self,
        r: Request<pc::LeaveRequest>,
    ) -> Result<Response<pc::LeaveReply>, Status> {
        if self.remote {
            return Err(Status::permission_denied(
                "leaving is asked of a node on its own socket: run \"shoal leave\" on the node",
            ));
        }
        self.leave(r.into_inner().force).await.map(Response::new)
    }

    async fn remove_node(
        &self,
        r: Request<pc::RemoveNodeRequest>,
    ) -> Result<Response<pc::RemoveReply>, Status> {
        nodes::remove(self, r).await
    }

    async fn list_nodes(
        &self,
        r: Request<pc::ListRequest>,
    ) -> Result<Response<pc::ListReply>, Status> {
        nodes::list(self, r).await
    }

    async fn update_node(
        &self,
        r: Request<pc::UpdateNodeRequest>,
    ) -> Result<Response<pc::ObjectReply>, Status> {
        nodes::update(self, r).await
    }

    async fn create_service(
        &self,
        r: Request<pc::CreateServiceRequest>,
    ) -> Result<Response<pc::ObjectReply>, Status> {
        services::create(self, r).await
    }

    async fn update_service(
        &self,
        r: Request<pc::UpdateServiceRequest>,
    ) -> Result<Response<pc::ObjectReply>, Status> {
        services::update(self, r).await
    }

    async fn remove_service(
        &self,
        r: Request<pc::RemoveRequest>,
    ) -> Result<Response<pc::RemoveReply>, Status> {
        services::remove(self, r).await
    }

    async fn get_service(
        &self,
        r: Request<pc::GetRequest>,
    ) -> Result<Response<pc::ObjectReply>, Status> {
        services::get(self, r).await
    }

    async fn list_services(
        &self,
        r: Request<pc::ListRequest>,
    ) -> Result<Response<pc::ListReply>, Status> {
        services::list(self, r).await
    }

    async fn list_tasks(
        &self,
        r: Request<pc::ListTasksRequest>,
    ) -> Result<Response<pc::ListReply>, Status> {
        services::list_tasks(self, r).await
    }

    async fn create_network(
        &self,
        r: Request<pc::CreateNetworkRequest>,
    ) -> Result<Response<pc::ObjectReply>, Status> {
        networks::create_call(self, r).await
    }

    async fn remove_network(
        &self,
        r: Request<pc::RemoveRequest>,
    ) -> Result<Response<pc::RemoveReply>, Status> {
        networks::remove_call(self, r).await
    }

    async fn get_network(
        &self,
        r: Request<pc::GetRequest>,
    ) -> Result<Response<pc::ObjectReply>, Status> {
        networks::get_call(self, r).await
    }

    async fn list_networks(
        &self,
        r: Request<pc::ListRequest>,
    ) -> Result<Response<pc::ListReply>, Status> {
        networks::list_call(self, r).await
    }

    async fn list_volumes(
        &self,
        r: Request<pc::ListRequest>,
    ) -> Result<Response<pc::ListReply>, Status> {
        volumes::list_call(self, r).await
    }
}
